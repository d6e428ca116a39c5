"""`wan22bot fetch-models`: the seed workflow's six ComfyUI files, from their public Hub repositories.

catalog: which files, from where, to where (no imports beyond the standard library, so the CLI's
help can list them); hub: the Hub's metadata and byte streams; download: the folder, disk check,
resume, sha256 and the final rename.
"""
