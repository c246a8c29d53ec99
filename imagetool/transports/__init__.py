"""Images in every direction: one lazy image reader/writer per place an image can live.

    walk.py      the one index walk (select one platform, or every manifest children-first) and
                 its one depth limit; used by image.py, pull.py, archive/plan.py and the copy loop
    base.py      the Source / Sink contract and copy_image, the loop every transfer runs
    store.py     the local store (StoreSource: a name/digest/ID; StoreSink: ingest, put, tag)
    registry.py  a registry repository (RegistrySource; RegistrySink: the push protocol)
    layout.py    oci:DIR, oci-archive:, docker-archive: as sources (the load's verified reader),
                 an OCI layout directory as a sink
    archive.py   oci-archive / docker-archive tars as a sink (save and copy)
    convert.py   a source seen in the OCI or Docker media types (push/copy --format)

Services on top: pull.py (registry → store, with its up-to-date check and mirrors), push.py
(store → registry), transfer.py (copy between any two), archive/saver.py (store → archive).
"""
