"""`tritonflow kube`: Kubernetes manifests (KServe, or plain Deployment/Service/HPA/ServiceMonitor) and a
Dockerfile that serve one model of an S3 repository, on Triton or on `tritonflow serve`.

plan.py reads the repository once (model, release state, Triton dialect); containers.py is the one
serving container per runtime; kserve.py and plain.py wrap it in their kinds; command.py writes them.
"""
