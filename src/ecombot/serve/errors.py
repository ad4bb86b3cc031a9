"""OpenAI-shaped errors: whatever goes wrong, the client gets `{"error": {message, type, param, code}}`.

Everything a client can get wrong comes back with a 4xx status; a 500 says "internal server error" and
nothing more (the traceback goes to the server log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ecombot.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


async def api_error(_: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (unknown route, wrong method) in the same shape."""
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return ApiError(exc.status_code, str(exc.detail), type_).response()


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return ApiError(400, str(exc.errors()[0].get("msg", "invalid request"))).response()


async def internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return ApiError(500, "internal server error", "server_error").response()


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
