"""python -m frontend [--host H] [--port P]: the OpenAI endpoint in front of Triton (settings from env)."""
import argparse
import logging
import threading
import time

import uvicorn

from .app import create_app

log = logging.getLogger("nanovl.frontend")


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: refuse new generations (503, readiness 503) and let running ones finish
    for up to drain_timeout_s before uvicorn's own shutdown; a second signal exits at once."""

    def handle_exit(self, sig, frame) -> None:
        admission = self.config.app.state.admission
        if admission.draining:
            return super().handle_exit(sig, frame)
        admission.draining = True
        deadline = time.monotonic() + self.config.app.state.settings.drain_timeout_s
        log.info("draining: %d requests running, %d waiting", admission.running, admission.waiting)

        def drain() -> None:
            while not admission.idle and time.monotonic() < deadline:
                time.sleep(0.1)
            log.info("drained%s", "" if admission.idle else f" up to the deadline ({admission.running} cut off)")
            super(DrainingServer, self).handle_exit(sig, frame)

        threading.Thread(target=drain, name="drain", daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=5,   # our middleware logs one line per request
                            limit_concurrency=app.state.settings.max_connections)
    DrainingServer(config).run()


if __name__ == "__main__":
    main()
