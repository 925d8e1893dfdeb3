"""edgefleet device agent.

Importing this package stays cheap: it must never load fastapi, sqlmodel,
sqlalchemy, tensorflow or the controller (a test checks ``sys.modules``).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
