"""A streamed HTTP answer (SSE, chunked text) that is counted as one request until its last byte.

Starlette returns the response object to the route as soon as it is made, so a ``with
Call`` around the route would end the request's accounting before the first token: the
in-flight gauge (which the autoscaler reads) would miss every running stream, the duration would
be the time to the first byte, and an error in the middle of a stream (sent as an SSE ``error``
event after a 200 header) would count as a success, hidden from the error-rate alert.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from deepserve.service.call import Call
from deepserve.service.errors import ClientClosedError, DeepserveError, as_deepserve_error

CLIENT_CLOSED = str(ClientClosedError.status)  # the client left before the answer ended


class TrackedStreamingResponse(StreamingResponse):
    def __init__(
        self,
        call: Call,
        content: AsyncIterator[bytes],
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        call.keep_open()
        self.call, self._completed = call, False
        super().__init__(self._watch(content), media_type=media_type, headers=headers)

    async def _watch(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for part in content:
            yield part
        self._completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if not self._completed:
                self.call.code = str(as_deepserve_error(exc).status)
            raise
        finally:
            if not self._completed and self.call.code == "200":
                self.call.code = CLIENT_CLOSED  # disconnected or cancelled mid-stream
            self.call.finish()


def record_stream_error(call: Call, exc: BaseException) -> DeepserveError:
    """For streams that report an error in-band (an SSE ``error`` event): count its status."""
    error = as_deepserve_error(exc)
    call.code = str(error.status)
    return error
