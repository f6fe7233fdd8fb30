"""What a client (or a web page) must not be able to make the server do: fetch internal URLs (SSRF), answer for
another site's name (DNS rebinding) or another origin (CORS), fall over on huge numbers, or decode more images
at once than it has memory for. No network: every server here is on 127.0.0.x."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.server
import io
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serve_api import draw, make_collection, png_base64

from vlm.serve import fetch
from vlm.serve.app import create_app
from vlm.serve.errors import ApiError
from vlm.serve.process import free_port
from vlm.serve.service import PixelBudget, ServeConfig

PNG = io.BytesIO()
draw("red", "circle").save(PNG, format="PNG")
PNG = PNG.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    """/png: an image; /text: not an image; /forbidden: 403; /hop/N: a redirect to /hop/N-1, /hop/0 the image;
    /to?url=U: a redirect to U; /big: a body over any limit here, /stream the same without a Content-Length.
    Every request is counted by path."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.hits.append((self.path, self.headers.get("Host")))
        path, _, query = self.path.partition("?")
        if path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            return self.reply(302, location=f"/hop/{left - 1}") if left else self.reply(200, PNG)
        if path == "/to":
            return self.reply(302, location=query.removeprefix("url="))
        if path == "/stream":  # HTTP/1.0: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            return self.wfile.write(b"x" * 200_000)
        bodies = {"/png": (200, PNG), "/text": (200, b"internal secret"), "/forbidden": (403, b"no"),
                  "/big": (200, b"x" * 200_000)}
        self.reply(*bodies.get(path, (404, b"")))

    def reply(self, status: int, body: bytes = b"", location: str | None = None) -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def origin():
    """A web server on 127.0.0.1 that records each request; yields its base URL and the record."""
    servers = []

    def start(host: str = "127.0.0.1"):
        server = http.server.ThreadingHTTPServer((host, 0), Handler)
        server.hits = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://{host}:{server.server_port}", server.hits

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_loopback_server_is_refused_before_any_request_reaches_it(origin):
    url, hits = origin()
    with pytest.raises(fetch.FetchError, match="not a public address"):
        fetch.fetch(f"{url}/png", 100_000)
    with pytest.raises(fetch.FetchError, match="not a public address"):
        fetch.fetch(f"http://localhost:{url.rsplit(':', 1)[1]}/png", 100_000)
    assert hits == []
    assert fetch.fetch(f"{url}/png", 100_000, allow_private=True) == PNG


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1",
                                     "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
                                     "::ffff:169.254.169.254", "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe"])
def test_addresses_that_are_not_globally_routable_are_refused(address):
    import ipaddress

    assert not fetch.is_public(ipaddress.ip_address(address))
    with pytest.raises(fetch.FetchError, match="not a public address"):
        fetch.resolve(address, 80, allow_private=False)


def test_public_addresses_are_allowed():
    import ipaddress

    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert fetch.is_public(ipaddress.ip_address(address)), address


def test_a_redirect_to_a_private_address_is_refused(origin, monkeypatch):
    """127.0.0.1 plays a public server here; its redirect to 127.0.0.2 (private) must not be followed."""
    public, public_hits = origin("127.0.0.1")
    private, private_hits = origin("127.0.0.2")
    monkeypatch.setattr(fetch, "is_public", lambda address: str(address) == "127.0.0.1")
    assert fetch.fetch(f"{public}/png", 100_000) == PNG
    with pytest.raises(fetch.FetchError, match="127.0.0.2, not a public address"):
        fetch.fetch(f"{public}/to?url={private}/png", 100_000)
    assert [path for path, _ in public_hits] == ["/png", f"/to?url={private}/png"]
    assert private_hits == []


def test_redirects_stop_after_the_hop_cap(origin):
    url, hits = origin()
    assert fetch.fetch(f"{url}/hop/{fetch.MAX_REDIRECTS}", 100_000, allow_private=True) == PNG
    hits.clear()
    with pytest.raises(fetch.FetchError, match="more than 5 redirects"):
        fetch.fetch(f"{url}/hop/{fetch.MAX_REDIRECTS + 1}", 100_000, allow_private=True)
    assert len(hits) == fetch.MAX_REDIRECTS + 1


def test_the_connection_goes_to_the_address_checked_with_one_lookup(origin, monkeypatch):
    """A rebinding name could answer a second lookup with another address: there is none. The server still
    sees the name in Host."""
    url, hits = origin()
    port = int(url.rsplit(":", 1)[1])
    lookups = []

    def getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        return real(host if host != "images.example" else "127.0.0.1", *args, **kwargs)

    real = fetch.socket.getaddrinfo
    monkeypatch.setattr(fetch.socket, "getaddrinfo", getaddrinfo)
    assert fetch.fetch(f"http://images.example:{port}/png", 100_000, allow_private=True) == PNG
    assert lookups.count("images.example") == 1  # the connection itself looks up only "127.0.0.1"
    assert hits == [("/png", f"images.example:{port}")]


def test_the_size_cap_holds_while_streaming(origin):
    url, _ = origin()
    with pytest.raises(fetch.FetchError, match="Content-Length 200000 is over 100000 bytes"):
        fetch.fetch(f"{url}/big", 100_000, allow_private=True)
    with pytest.raises(fetch.FetchError, match="body over 100000 bytes"):
        fetch.fetch(f"{url}/stream", 100_000, allow_private=True)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    return make_collection(tmp_path_factory.mktemp("security"))


def serve(collection: dict, **config) -> TestClient:
    """The app in-process (TestClient, whose Host is "testserver"), once the model and the index are loaded."""
    config = {"trusted_hosts": ("testserver",), **config}
    client = TestClient(create_app(ServeConfig(checkpoint=str(collection["checkpoint"]),
                                               index=str(collection["index"]), **config)))
    client.__enter__()
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def client(collection):
    client = serve(collection, allow_image_urls=True)
    yield client
    client.__exit__(None, None, None)


def knn(client: TestClient, image_url: str):
    return client.post("/knn-service", json={"image_url": image_url, "modality": "image", "num_images": 3})


def test_every_image_url_failure_reads_the_same(client, origin, monkeypatch):
    url, hits = origin()
    closed = f"http://127.0.0.1:{free_port()}/png"
    failures = [f"{url}/png", f"{url}/forbidden", closed, "http://169.254.169.254/latest/meta-data/"]
    answers = [knn(client, u) for u in failures]
    assert hits == []  # nothing was fetched from 127.0.0.1 without --allow-private-urls
    service = client.app.state.service
    monkeypatch.setattr(service, "config", dataclasses.replace(service.config, allow_private_urls=True))
    answers += [knn(client, u) for u in (f"{url}/text", f"{url}/forbidden", closed, f"{url}/hop/9")]
    for response in answers:
        assert response.status_code == 400
        assert response.json() == {"error": {"code": "image_url_failed",
                                              "message": "could not fetch image_url as an image"}}
        assert "0x" not in response.text
    assert knn(client, f"{url}/png").status_code == 200


def test_no_error_message_names_an_object(client):
    """PIL's messages name the BytesIO it read, with its heap address."""
    for not_an_image in (base64.b64encode(b"just some text").decode(), png_base64(draw("red", "circle"))[:40]):
        for response in (client.post("/v1/search", json={"image": not_an_image}),
                         client.post("/knn-service", json={"image": not_an_image, "modality": "image"}),
                         client.post("/v1/embed", json={"images": [not_an_image]})):
            assert response.status_code == 400 and response.json()["error"]["code"] == "not_an_image"
            assert "0x" not in response.text and "BytesIO" not in response.text


def bare_app(**config) -> TestClient:
    """No model or index needed: the host and CORS checks run before any route."""
    return TestClient(create_app(ServeConfig(checkpoint="unused", index="unused", **config)))


def test_a_host_not_served_is_400_and_the_default_is_the_bound_host_and_loopback():
    client = bare_app()
    for host in ("evil.example", "testserver", "evil.example:8000", "127.0.0.1.evil.example"):
        response = client.get("/healthz", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.json()["error"]["code"] == "bad_host"
    for host in ("127.0.0.1:8000", "localhost", "localhost:8000", "[::1]:8000"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    served = bare_app(host="10.1.2.3")
    assert served.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    named = bare_app(trusted_hosts=("search.example", "*.corp.example"))
    assert named.get("/healthz", headers={"Host": "search.example"}).status_code == 200
    assert named.get("/healthz", headers={"Host": "a.corp.example"}).status_code == 200
    assert named.get("/healthz", headers={"Host": "localhost"}).status_code == 400
    assert bare_app(trusted_hosts=("*",)).get("/healthz", headers={"Host": "anything"}).status_code == 200


def test_cors_headers_only_for_the_origins_given():
    client = bare_app(trusted_hosts=("testserver",))
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://a.example"}).headers
    client = bare_app(trusted_hosts=("testserver",), cors_origins=("http://a.example",))
    allowed = client.get("/healthz", headers={"Origin": "http://a.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://a.example"
    other = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options("/v1/search", headers={"Origin": "http://a.example",
                                                       "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://a.example"


@pytest.mark.parametrize("path,body", [
    ("/metadata", '{"ids": [' + "9" * 5000 + "]}"),
    ("/metadata", '{"ids": [1], "other": ' + "9" * 5000 + "}"),
    ("/knn-service", '{"text": "x", "aesthetic_score": ' + "9" * 5000 + "}"),
    ("/knn-service", '{"text": "x", "num_images": -' + "9" * 5000 + "}"),
    ("/v1/search", '{"text": "x", "k": ' + "9" * 5000 + "}"),
    ("/v1/items", '{"image": "x", "metadata": {"n": ' + "9" * 5000 + "}}"),
])
def test_an_integer_of_thousands_of_digits_is_a_400(client, path, body):
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "\n" not in response.json()["error"]["message"]


def test_every_integer_of_the_clip_retrieval_bodies_is_bounded(client):
    base = {"text": "x", "modality": "image"}
    for field, value in (("aesthetic_score", 10), ("aesthetic_score", -1), ("aesthetic_score", 10**30),
                         ("num_images", 10**30), ("num_result_ids", 10**30)):
        response = client.post("/knn-service", json={**base, field: value})
        assert response.status_code == 422 and response.json()["error"]["message"].startswith(field), response.text
    assert client.post("/knn-service", json={**base, "aesthetic_score": 9, "num_images": 2}).status_code == 200
    assert client.post("/metadata", json={"ids": [2**63]}).status_code == 422


def test_pixel_budget_reserves_up_to_its_capacity():
    budget = PixelBudget(100)
    with budget.reserve(60), pytest.raises(ApiError) as refused, budget.reserve(41):
        pass
    assert (refused.value.status, refused.value.code, refused.value.headers) == (503, "busy", {"Retry-After": "1"})
    with budget.reserve(60), budget.reserve(40):
        assert budget.used == 100
    with budget.reserve(10**9):  # larger than the budget: waits for all of it
        assert budget.used == 100
    assert budget.used == 0


def test_past_the_decoding_budget_images_get_503_busy_with_retry_after(client):
    service = client.app.state.service
    image = png_base64(draw("red", "circle"))
    requests = [("/v1/search", {"image": image}), ("/v1/embed", {"images": [image]}),
                ("/v1/classify", {"image": image, "labels": ["circle", "square"]}),
                ("/v1/items", {"image": image, "caption": "held"}),
                ("/knn-service", {"image": image, "modality": "image", "num_images": 2})]
    with service.pixel_budget.reserve(service.config.max_decoding_pixels):  # another request decoding
        for path, body in requests:
            response = client.post(path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "busy" and response.headers["retry-after"] == "1"
        assert client.post("/v1/search", json={"text": "a red circle", "k": 1}).status_code == 200
        assert client.get("/healthz").status_code == 200
    assert service.pixel_budget.used == 0
    for path, body in requests:
        assert client.post(path, json=body).status_code == 200, path


def test_images_are_decoded_off_the_event_loop(client, monkeypatch):
    service = client.app.state.service
    on_loop = []
    decode = service.decode_image

    def recording(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return decode(*args, **kwargs)

    monkeypatch.setattr(service, "decode_image", recording)
    image = png_base64(Image.new("RGB", (64, 48), "blue"))
    for path, body in [("/v1/search", {"image": image}), ("/v1/embed", {"images": [image, image]}),
                       ("/v1/classify", {"image": image, "labels": ["blue"]}),
                       ("/v1/items", {"image": image}),
                       ("/knn-service", {"image": image, "modality": "image", "num_images": 1})]:
        assert client.post(path, json=body).status_code == 200, path
    assert on_loop and not any(on_loop), on_loop
