"""Features: the customer feature definitions, their SQL, the engines, validation and the Feast repository."""
