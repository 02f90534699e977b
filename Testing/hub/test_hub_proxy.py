"""Downloads through an HTTP proxy named in HTTP_PROXY, as the README documents for hospital networks."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from hub_testing import (  # noqa: F401
    fake_hub,
    hub_environment,
    registry_entry,
    run_screener,
    serve_package,
    write_registry,
)


class ForwardProxy(BaseHTTPRequestHandler):
    """A plain HTTP forward proxy: it receives absolute URLs and relays each request to its host."""

    seen: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - the base class names it so
        pass

    def relay(self, send_body: bool) -> None:
        ForwardProxy.seen.append(f"{self.command} {self.path}")
        target = urlsplit(self.path)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        path = target.path + (f"?{target.query}" if target.query else "")
        headers = {key: value for key, value in self.headers.items() if key.lower() != "proxy-connection"}
        connection.request(self.command, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            # A HEAD response keeps the upstream Content-Length, the size of the body a GET would return.
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", response.getheader("Content-Length", "0") if not send_body else str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
        connection.close()

    def do_GET(self):
        self.relay(send_body=True)

    def do_HEAD(self):
        self.relay(send_body=False)


def test_download_goes_through_http_proxy(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder, "screener-test/tiny")
    registry = write_registry(tmp_path, [registry_entry("tiny-hub", "screener-test/tiny", commit, digests)])
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), ForwardProxy)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    ForwardProxy.seen = []
    env = {"HF_ENDPOINT": fake_hub.url, "SCREENER_MODEL_REGISTRY": str(registry),
           "HF_HOME": str(tmp_path / "hf_home"), "HTTP_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}",
           "NO_PROXY": "", "no_proxy": ""}
    try:
        result = run_screener(["download", "tiny-hub"], env)
    finally:
        proxy.shutdown()
        proxy.server_close()

    assert result.returncode == 0, result.stderr
    assert f"HEAD {fake_hub.url}/screener-test/tiny/resolve/{commit}/config.json" in ForwardProxy.seen
    assert f"GET {fake_hub.url}/screener-test/tiny/resolve/{commit}/config.json" in ForwardProxy.seen
    cdn_requests = [line for line in ForwardProxy.seen if line.startswith(f"GET {fake_hub.cdn_url}/blobs/")]
    assert len(cdn_requests) == 3
    assert len(fake_hub.requests) == len(ForwardProxy.seen)
