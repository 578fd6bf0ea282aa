"""The serving side of ae-zoo (installed as ``zoo_handlers``, shipped inside every ``.mar``)."""

#: Written by ``zoo package`` into the archive: which plugin modules to register, and the request limit.
SERVING_MANIFEST = "zoo-serving.json"
