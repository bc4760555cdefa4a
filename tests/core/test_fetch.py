"""The fetcher against a real HTTP server on 127.0.0.1 serving images, redirects, slow and huge bodies."""
import io
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from nanovl.core.errors import ClientError
from nanovl.core.fetch import Fetcher, FetchSettings, address_refusal, domain_allowed

PNG = io.BytesIO()
Image.new("RGB", (8, 8), (1, 2, 3)).save(PNG, "PNG")
PNG = PNG.getvalue()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", content_type="image/png", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        try:
            self._route(self.path)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the fetcher hung up on a body over its cap or its deadline: that is the point

    def _route(self, path):
        if path == "/img.png":
            self._send(200, PNG)
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            self._send(302, headers=[("Location", f"/redirect/{hops - 1}" if hops > 1 else "/img.png")])
        elif path == "/to-metadata":
            self._send(302, headers=[("Location", "http://169.254.169.254/latest/meta-data")])
        elif path == "/html":
            self._send(200, b"<html></html>", "text/html")
        elif path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()   # no Content-Length: the cap must hold while streaming
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"no", "text/plain")


@contextmanager
def http_server(handler):
    """A threaded HTTP server on 127.0.0.1 (a free port) for the duration of the block -> its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    with http_server(Handler) as url:
        yield url


@pytest.fixture(scope="module")
def fetcher():
    f = Fetcher(FetchSettings(allow_private=True, max_bytes=1_000_000, read_timeout_s=2, total_timeout_s=1.5,
                              max_redirects=3))
    yield f
    f.close()


def fetch_one(fetcher, url, index=0):
    result = fetcher.fetch_many([(index, url)])[0]
    if isinstance(result, ClientError):
        raise result
    return result


def test_fetches_an_image_and_follows_redirects(fetcher, server):
    assert fetch_one(fetcher, f"{server}/img.png") == PNG
    assert fetch_one(fetcher, f"{server}/redirect/3") == PNG


@pytest.mark.parametrize("path, code, words", [
    ("/redirect/4", "image_fetch_failed", "more than 3 redirects"),
    ("/missing", "image_fetch_failed", "HTTP 404"),
    ("/html", "invalid_image", "text/html"),
    ("/huge", "image_too_large", "more than 1000000 bytes"),
    ("/slow", "image_fetch_timeout", "longer than 1.5 s"),
])
def test_refusals_name_the_image_and_the_reason(fetcher, server, path, code, words):
    with pytest.raises(ClientError) as info:
        fetch_one(fetcher, server + path, index=2)
    assert info.value.code == code and info.value.message.startswith("image 2:") and words in info.value.message


def test_many_urls_are_fetched_concurrently_and_fail_alone(fetcher, server):
    start = time.monotonic()
    results = fetcher.fetch_many([(0, f"{server}/slow"), (1, f"{server}/img.png"), (2, f"{server}/slow")])
    assert time.monotonic() - start < 2.5   # two 1.5 s timeouts side by side, not one after the other
    assert results[1] == PNG and all(isinstance(r, ClientError) for r in (results[0], results[2]))


def test_private_addresses_are_refused_unless_allowed(server):
    strict = Fetcher(FetchSettings(total_timeout_s=3))
    try:
        for url in (f"{server}/img.png", "http://localhost/x", "http://[::1]/x", "http://10.1.2.3/x",
                    "http://169.254.169.254/latest/meta-data", "http://[::ffff:127.0.0.1]/x"):
            result = strict.fetch_many([(1, url)])[0]
            assert isinstance(result, ClientError) and result.code == "image_url_forbidden", url
            assert result.message.startswith("image 1:")
    finally:
        strict.close()


def test_a_redirect_to_cloud_metadata_is_refused(server):
    # The test server is private, so the hop rule is shown with the domain allow-list: every hop is checked.
    fetcher = Fetcher(FetchSettings(allow_private=True, allowed_domains=("127.0.0.1",), total_timeout_s=3))
    try:
        result = fetcher.fetch_many([(0, f"{server}/to-metadata")])[0]
        assert isinstance(result, ClientError) and result.code == "image_url_forbidden"
        assert "169.254.169.254" in result.message
    finally:
        fetcher.close()


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "http:///nohost"])
def test_other_schemes_are_refused(fetcher, url):
    with pytest.raises(ClientError) as info:
        fetch_one(fetcher, url)
    assert info.value.code == "invalid_image_url"


def test_domain_allow_list(server):
    assert domain_allowed("img.example.com", ("example.com",)) and domain_allowed("example.com", ("example.com",))
    assert not domain_allowed("badexample.com", ("example.com",)) and domain_allowed("any.org", ())
    fetcher = Fetcher(FetchSettings(allow_private=True, allowed_domains=("example.com",)))
    try:
        result = fetcher.fetch_many([(0, f"{server}/img.png")])[0]
        assert isinstance(result, ClientError) and "allow-list" in result.message
    finally:
        fetcher.close()


@pytest.mark.parametrize("address, public", [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False),
                                             ("192.168.1.1", False), ("169.254.169.254", False),
                                             ("100.100.100.200", False), ("fd00:ec2::254", False),
                                             ("::ffff:10.0.0.1", False), ("224.0.0.1", False), ("0.0.0.0", False)])
def test_address_classification(address, public):
    assert (address_refusal(address) is None) == public
