"""Round orchestration over the services, the trainer-job entrypoint, local and Kubernetes executors.

Depends on `unigap`; `unigap` never imports from here."""
