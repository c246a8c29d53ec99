"""The container runtime: executes an OCI runtime spec with namespaces, cgroups and pivot_root."""
