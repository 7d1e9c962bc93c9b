"""The API's OpenAPI document, and the committed snapshot (``openapi.json`` at the repository root) that a
test keeps in step with the code, so every API change shows up in review as a diff of that file.

    python -m app.api.openapi            # rewrite openapi.json after changing the API
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[2] / "openapi.json"


def document() -> dict:
    from app.api.main import create_app
    from app.settings import Settings

    return create_app(Settings()).openapi()


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else SNAPSHOT
    path.write_text(render(document()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
