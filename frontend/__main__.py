"""python -m frontend [--host H] [--port P]: the OpenAI endpoint in front of Triton (settings from env)."""
import argparse
import logging

import uvicorn

from .app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=5)   # our middleware logs one line per request


if __name__ == "__main__":
    main()
