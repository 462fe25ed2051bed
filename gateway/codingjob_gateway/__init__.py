"""codingjob-gateway: the HTTP API and web console of CodingJob, a thin Kubernetes API client."""
