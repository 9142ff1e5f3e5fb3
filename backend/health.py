"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel

from backend.db import Database
from backend.errors import error_response
from backend.http import SuccessModel, error_responses, ok

class HealthStatus(BaseModel):
    status: str


class HealthResponse(SuccessModel):
    data: HealthStatus


def health_api(db: Database) -> APIBlueprint:
    bp = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])

    @bp.get("/healthz", responses={200: HealthResponse})
    def healthz():
        """The process is up (no dependencies checked)."""
        return ok(HealthResponse(data=HealthStatus(status="alive")))

    @bp.get("/readyz", responses={200: HealthResponse, **error_responses(503)})
    def readyz():
        """The database answers ("busy": every pooled connection is in use, and they keep coming back); take the instance out of rotation when not."""
        # Busy is ready, and not pinged: a ping would only queue behind the requests.
        state = db.readiness()
        if state is None:
            return error_response(503, "database_unavailable", "The database is not reachable", headers={"Retry-After": "5"})
        return ok(HealthResponse(data=HealthStatus(status=state)))

    return bp
