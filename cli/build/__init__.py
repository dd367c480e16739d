"""Building images (`fim build`, `fim image new`): the root skeleton (:mod:`rootfs`), the
blueprint root (:mod:`blueprint`), the runtime payloads an image carries
(:mod:`payload`: the launcher and the python runtime; :mod:`frozen`: the portable one).
Nothing here runs when an image is executed."""
