"""Pagination for every list: ``limit`` and ``offset`` in, the list as the body, and two headers out.

``X-Total-Count`` is how many items match in all, and ``Link: <...>; rel="next"``
(RFC 8288) is the URL of the next page, absent on the last one: the convention
GitHub's API and most HTTP clients follow (``httpx.Response.links``), and the
body stays a plain JSON array, so existing clients keep working.
"""

from collections.abc import Sequence  # no "from __future__ import annotations": FastAPI reads the closure's annotations
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response
from sqlalchemy import func
from sqlmodel import Session, select
from sqlmodel.sql.expression import SelectOfScalar

T = TypeVar("T")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int
    request: Request
    response: Response

    def finish(self, total: int, shown: int) -> None:
        """Set the total and, when more remain, the link to the next page."""
        self.response.headers["X-Total-Count"] = str(total)
        if self.offset + shown < total and shown > 0:
            nxt = self.request.url.include_query_params(offset=self.offset + shown, limit=self.limit)
            self.response.headers["Link"] = f'<{nxt}>; rel="next"'

    def rows(self, session: Session, q: SelectOfScalar[T]) -> list[T]:
        """Run a select for this page and count all its matches."""
        total = session.exec(select(func.count()).select_from(q.order_by(None).subquery())).one()
        items = list(session.exec(q.offset(self.offset).limit(self.limit)).all())
        self.finish(int(total), len(items))
        return items

    def slice(self, items: Sequence[T]) -> list[T]:
        """Page a list computed in memory."""
        chunk = list(items[self.offset : self.offset + self.limit])
        self.finish(len(items), len(chunk))
        return chunk


def page_params(default: int = 100, maximum: int = MAX_LIMIT) -> Any:
    def dep(
        request: Request,
        response: Response,
        limit: Annotated[int, Query(ge=1, le=maximum, description="items per page")] = default,
        offset: Annotated[int, Query(ge=0, le=2**31, description="items to skip")] = 0,
    ) -> Page:
        return Page(limit, offset, request, response)

    return Depends(dep)


PageDep = Annotated[Page, page_params()]
_LINK = 'RFC 8288 link to the next page (rel="next"); absent on the last page'
PAGED: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "X-Total-Count": {"description": "items matching in all", "schema": {"type": "integer"}},
            "Link": {"description": _LINK, "schema": {"type": "string"}},
        }
    }
}
