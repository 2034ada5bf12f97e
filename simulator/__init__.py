"""Procedural road scenes with per-pixel Cityscapes trainId ground truth (numpy, no torch).

``scene.render_frame`` renders one independent scene, ``drive.Drive`` a coherent stream that can
move from the ``urban`` to the ``rural`` domain, ``oracle.OracleAnnotator`` labels regions from
ground truth, the class names and colours live in ``common.classes``.
"""
