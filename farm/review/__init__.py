"""The review page: `farm review` serves it over a store; `farm review --export` writes it as files."""
