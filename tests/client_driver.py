"""Many sessions at once through Streamlit's own websocket protocol: the load test without browsers.

Ten Chromium tabs on the server's two cores spend most of the CPU themselves (in ``bench/load_test.py``
the server used under a tenth of it), so their timings say more about the browsers than the server.
This client does what the Diagnose page's JavaScript does, with almost no CPU: it opens a session
(``/_stcore/stream``), runs the page, switches model in the sidebar, asks for an upload URL, uploads
the X-ray (``PUT /_stcore/upload_file``, with the XSRF token of the page's cookie), reruns the page
with the file and waits for the reading and the heatmap to arrive. A doctor's own browser then draws
them; that part is measured by the browser load test and is not included here.

Usage (from ``bench/load_test.py`` or the tests):
    figures = run_client_load(url, image, sessions=10, model="xception")
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import requests
import websockets
from load_driver import READING_LABEL, percentiles, run_on_own_thread, values
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

XSRF_COOKIE = "_streamlit_xsrf"
MODEL_KEY = "model"
UPLOAD_KEY = "upload"


class Session:
    """One Streamlit session driven over its websocket, keeping the widgets the page has drawn."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session_id = ""
        self.widgets: dict[str, object] = {}  # key -> the element's proto (selectbox, file_uploader)
        self._socket = None
        self._xsrf = ""

    async def open(self) -> None:
        """Get an XSRF cookie (from the health check, as the page's JavaScript does), connect, run the page once."""
        health = await asyncio.to_thread(requests.get, self.url + "/_stcore/health", timeout=60)
        health.raise_for_status()
        self._xsrf = health.cookies.get(XSRF_COOKIE, "")
        self._socket = await websockets.connect(
            self.url.replace("http", "ws", 1) + "/_stcore/stream",
            subprotocols=["streamlit", self._xsrf] if self._xsrf else ["streamlit"],
            additional_headers={"Origin": self.url, "Cookie": f"{XSRF_COOKIE}={self._xsrf}"},
            max_size=None,
        )
        await self.rerun([])
        await self.until(lambda msg: msg.WhichOneof("type") == "script_finished")

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()

    async def rerun(self, states: list[WidgetState]) -> None:
        """Ask the server to rerun the page with these widget values (all others at their defaults)."""
        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.widget_states.widgets.extend(states)
        await self._socket.send(message.SerializeToString())

    async def receive(self) -> ForwardMsg:
        """The next message from the server, remembering the session id and the keyed widgets."""
        msg = ForwardMsg.FromString(await self._socket.recv())
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.session_id = msg.new_session.initialize.session_id
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            widget = getattr(element, element.WhichOneof("type") or "", None)
            key = getattr(widget, "id", "")
            for wanted in (MODEL_KEY, UPLOAD_KEY):
                if isinstance(key, str) and key.endswith(f"-{wanted}"):
                    self.widgets[wanted] = widget
        return msg

    async def until(self, done) -> ForwardMsg:
        """Receive until ``done(msg)`` holds; returns that message."""
        while not done(msg := await self.receive()):
            pass
        return msg

    def model_state(self, model: str) -> WidgetState:
        """The sidebar's model selectbox set to ``model`` (its shown option, e.g. "xception ★")."""
        selectbox = self.widgets[MODEL_KEY]
        option = next(option for option in selectbox.options if option.split(" ")[0] == model)
        return WidgetState(id=selectbox.id, string_value=option)

    async def upload(self, image: Path) -> WidgetState:
        """Upload ``image`` as the page's JavaScript does; returns the uploader's new widget value."""
        request_id = uuid.uuid4().hex
        message = BackMsg()
        message.file_urls_request.request_id = request_id
        message.file_urls_request.file_names.append(image.name)
        message.file_urls_request.session_id = self.session_id
        await self._socket.send(message.SerializeToString())
        reply = await self.until(
            lambda msg: (
                msg.WhichOneof("type") == "file_urls_response" and msg.file_urls_response.response_id == request_id
            )
        )
        urls = reply.file_urls_response.file_urls[0]
        data = image.read_bytes()
        sent = await asyncio.to_thread(
            requests.put,
            self.url + urls.upload_url,
            files={"file": (image.name, data, "image/png")},
            headers={"X-Xsrftoken": self._xsrf},
            cookies={XSRF_COOKIE: self._xsrf},
            timeout=60,
        )
        sent.raise_for_status()
        state = WidgetState(id=self.widgets[UPLOAD_KEY].id)
        info = state.file_uploader_state_value.uploaded_file_info.add()
        info.file_id, info.name, info.size = urls.file_id, image.name, len(data)
        info.file_urls.CopyFrom(urls)
        return state


async def _one_session(url: str, image: Path, model: str, timeout_s: float, start: asyncio.Barrier) -> dict:
    session, figures = Session(url), {"outcome": "slow"}
    try:
        await asyncio.wait_for(session.open(), timeout_s)
        await asyncio.wait_for(start.wait(), timeout_s)  # Every page open: now all switch and upload at once.
        since = time.perf_counter()
        model_state = session.model_state(model)
        await session.rerun([model_state])
        upload_state = await session.upload(image)
        await session.rerun([model_state, upload_state])
        images = 0
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await session.receive()
                element = msg.delta.new_element if msg.WhichOneof("type") == "delta" else None
                kind = element.WhichOneof("type") if element is not None else None
                if kind == "metric" and element.metric.label == READING_LABEL:
                    figures.setdefault("reading_s", time.perf_counter() - since)
                elif kind == "imgs" and "reading_s" in figures:
                    images += 1
                    if images == 2:  # The original, then the heatmap overlay.
                        figures["heatmap_s"] = time.perf_counter() - since
                        figures["outcome"] = "done"
                        break
    except Exception as error:  # A timeout is the measured outcome here, not a crash of the driver.
        await start.abort()
        figures["error"] = f"{type(error).__name__}: {str(error)[:200]}"
    finally:
        await session.close()
    return figures


async def _run(url: str, images: list[Path], model: str, timeout_s: float) -> list[dict]:
    start = asyncio.Barrier(len(images))
    return await asyncio.gather(*(_one_session(url, image, model, timeout_s, start) for image in images))


def run_client_load(url: str, images: list[Path], model: str, timeout_s: float = 120) -> dict:
    """One session per image, all at once, through the websocket protocol.

    Returns:
        ``sessions``, ``done`` (sessions that got both the reading and the heatmap), each failed
        session's error, and percentiles of the reading and heatmap latency from the model switch.
    """
    results = run_on_own_thread(_run(url, images, model, timeout_s))
    return {
        "sessions": len(images),
        "model": model,
        "done": sum(result["outcome"] == "done" for result in results),
        "errors": [result["error"] for result in results if "error" in result],
        "reading": percentiles(values(results, "reading_s")),
        "heatmap": percentiles(values(results, "heatmap_s")),
    }
