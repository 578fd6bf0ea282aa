"""The whole model contract, checked by ae-zoo's conformance kit (the zoo_conformance fixture)."""

import pytest

from zoo_vq_ae import VQAE


@pytest.mark.parametrize("config", [{}, {"codebook_size": 8, "channels": [8, 16], "embedding_dim": 4}])
def test_conformance(zoo_conformance, config):
    zoo_conformance(VQAE, config=config)
