"""The bureau agent: enrollment pipeline, custodian role, local API and CLI."""
