"""Speaks the OCI distribution protocol: auth, transport and the client; never touches the store.

    auth.py       challenge parsing (RFC 7235), token cache, credentials, login/logout
    transport.py  TLS/CA files, http only for loopback/insecure, proxies, retries, timeouts, errors
    session.py    requests under transport.py (imported on first send): Session, adapter, Response
    client.py     RegistryClient(ref): head_manifest / get_manifest / blob_stream
"""
