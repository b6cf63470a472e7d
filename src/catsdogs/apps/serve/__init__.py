"""`catsdogs serve`: a trained model as an HTTP service and a web page (FastAPI + uvicorn).

The serving libraries are an optional extra (`pip install "catsdogs[serve]"`)."""
