"""The service as a Ray Serve application (:mod:`deploy.ray.app`); ``python -m deploy.ray`` runs it here."""
