"""Finding data sets (--data, $INTTOWER_DATA, the cache) and downloading them from a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.datasets import (
    Archive,
    DataNotFoundError,
    DownloadError,
    data_home,
    download_movielens,
    find_movielens,
    require_movielens,
)
from stream.movielens import import_movielens
from tests.stream.test_movielens import write_ml1m


@pytest.fixture(autouse=True)
def _isolated_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the machine's real data home or cache."""
    monkeypatch.delenv("INTTOWER_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def _ml1m_zip(tmp_path: Path, extra: dict[str, bytes] | None = None) -> bytes:
    folder = write_ml1m(tmp_path / "src" / "ml-1m")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"ml-1m/{file.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


class _Server:
    """A real HTTP server on 127.0.0.1 serving one archive at /ml-1m.zip; counts requests."""

    def __init__(self, body: bytes) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests += 1
                if self.path != "/ml-1m.zip":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(body: bytes) -> _Server:
        servers.append(_Server(body))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _archive(server: _Server, body: bytes, path: str = "/ml-1m.zip") -> Archive:
    return Archive("ml-1m", server.url + path, hashlib.md5(body).hexdigest(), "ratings.dat")


def test_download_verifies_unpacks_and_is_importable(tmp_path: Path, serve) -> None:
    body = _ml1m_zip(tmp_path)
    server = serve(body)
    home = tmp_path / "home"
    folder = download_movielens("ml-1m", home=home, progress=False, archive=_archive(server, body))
    assert folder == home / "ml-1m"
    assert import_movielens(folder).num_rows == 4
    assert [p.name for p in home.iterdir()] == ["ml-1m"]  # no temporary leftovers


def test_second_download_reuses_the_complete_copy(tmp_path: Path, serve) -> None:
    body = _ml1m_zip(tmp_path)
    server = serve(body)
    for _ in range(2):
        download_movielens("ml-1m", home=tmp_path / "home", progress=False, archive=_archive(server, body))
    assert server.requests == 1


def test_checksum_mismatch_keeps_nothing(tmp_path: Path, serve) -> None:
    body = _ml1m_zip(tmp_path)
    server = serve(body)
    wrong = Archive("ml-1m", server.url + "/ml-1m.zip", "0" * 32, "ratings.dat")
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="does not match the published"):
        download_movielens("ml-1m", home=home, progress=False, archive=wrong)
    assert list(home.iterdir()) == []


def test_http_error_is_one_line(tmp_path: Path, serve) -> None:
    body = _ml1m_zip(tmp_path)
    server = serve(body)
    with pytest.raises(DownloadError, match="download failed.*404"):
        download_movielens("ml-1m", home=tmp_path / "home", progress=False, archive=_archive(server, body, "/missing.zip"))


def test_unsafe_member_paths_are_refused(tmp_path: Path, serve) -> None:
    body = _ml1m_zip(tmp_path, extra={"../escape.txt": b"x"})
    server = serve(body)
    with pytest.raises(DownloadError, match="unsafe member"):
        download_movielens("ml-1m", home=tmp_path / "home", progress=False, archive=_archive(server, body))
    assert not (tmp_path / "escape.txt").exists()


def test_incomplete_copy_is_replaced(tmp_path: Path, serve) -> None:
    home = tmp_path / "home"
    partial = write_ml1m(home / "ml-1m")
    (partial / "ratings.dat").unlink()
    body = _ml1m_zip(tmp_path)
    server = serve(body)
    download_movielens("ml-1m", home=home, progress=False, archive=_archive(server, body))
    assert (home / "ml-1m" / "ratings.dat").is_file()


def test_lookup_order_explicit_then_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_copy = write_ml1m(tmp_path / "xdg-cache" / "inttower" / "ml-1m")
    assert find_movielens("ml-1m") == cache_copy
    env_copy = write_ml1m(tmp_path / "env" / "ml-1m")
    monkeypatch.setenv("INTTOWER_DATA", str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    assert find_movielens("ml-1m") == env_copy
    explicit = write_ml1m(tmp_path / "mine")
    assert find_movielens("ml-1m", explicit) == explicit


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        require_movielens("ml-100k", tmp_path / "nowhere")
    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message
    assert "inttower data movielens --download ml-100k" in message and "INTTOWER_DATA" in message
    assert "\n" not in message


def test_partial_copy_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = write_ml1m(tmp_path / "env" / "ml-1m")
    (partial / "ratings.dat").unlink()
    monkeypatch.setenv("INTTOWER_DATA", str(tmp_path / "env"))
    assert find_movielens("ml-1m") is None
