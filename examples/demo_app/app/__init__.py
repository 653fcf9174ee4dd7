"""Demo FastAPI app deployed by the app_service role."""
