"""Speaks the OCI distribution protocol: auth, transport and the client; never touches the store.

    auth.py       challenge parsing (RFC 7235), token cache, credentials, login/logout
    transport.py  http.client + ssl: TLS/CA files, http only for loopback/insecure, retries, timeouts
    client.py     RegistryClient(ref): head_manifest / get_manifest / blob_stream
"""
