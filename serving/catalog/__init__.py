"""The item catalog: versioned items in the event store (``store``), the in-memory index
and its retrievers (``index``, ``retrieval``), keeping them in step (``runtime``), the
``/v1/items`` endpoints (``routes``, ``schemas``) and ``banditops catalog load``
(``commands``, ``loader``)."""
