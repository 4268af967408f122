"""Benchmark harness for clusterlab: peers (Node.js cluster, uvicorn, gunicorn), wrk, A/B rounds."""
