"""Plugin discovery through real entry points, ZOO_PLUGINS selection and failure isolation."""

import pytest

import zoo
from zoo.errors import PluginError
from zoo.plugins import PluginWarning

BUILT_INS = {"dense-vae", "conv-vae", "denoising-ae", "colorization-ae"}

GOOD_PLUGIN = """
import dataclasses
import zoo
from zoo.components import MLP
from zoo.vae import VAEConfig, VariationalAutoencoder

@dataclasses.dataclass
class TinyConfig(VAEConfig):
    latent_dim: int = 2

class TinyVAE(VariationalAutoencoder):
    architecture = "{name}"
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.encoder = MLP(784, [8], 4)
        self.decoder = MLP(2, [8], 784)

    def posterior(self, x):
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z):
        return self.decoder(z).view(-1, 1, 28, 28)

@zoo.hookimpl
def register_architectures(register):
    register(TinyVAE)
"""

FAILURES = {
    "raises-on-import": "raise RuntimeError('boom at import')\n",
    "raises-in-hook": """
import zoo

@zoo.hookimpl
def register_architectures(register):
    raise RuntimeError('boom in hook')
""",
    "duplicate-name": GOOD_PLUGIN.replace("{name}", "conv-vae"),
    "invalid-registration": """
import zoo

@zoo.hookimpl
def register_architectures(register):
    register(object)
""",
    "bad-hook-signature": """
import zoo

@zoo.hookimpl
def register_architectures(add_one):
    pass
""",
}

EXPECTED_MESSAGE = {
    "raises-on-import": "import of 'raises_on_import' failed: RuntimeError: boom at import",
    "raises-in-hook": "register_architectures raised RuntimeError: boom in hook",
    "duplicate-name": "architecture 'conv-vae' is already registered by plugin 'conv-vae'",
    "invalid-registration": "is not a subclass of zoo.model.Autoencoder",
    "bad-hook-signature": "invalid hook implementation",
}


def test_built_ins_are_discovered_through_entry_points(fresh_plugins):
    host = fresh_plugins.get_host()
    assert BUILT_INS <= set(zoo.list_architectures())
    for name in BUILT_INS:
        record = host.records[name]
        assert record.distribution == "ae-zoo" and record.version == zoo.__version__
        assert record.module == f"zoo_plugins.{name.replace('-', '_')}"
        assert record.hooks == ["register_architectures", "register_models"]
        assert name in record.registered and not record.errors


def test_third_party_distribution_is_discovered(plugin_distribution):
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"), version="2.5")
    assert "tiny-vae" in zoo.list_architectures()
    record = zoo.plugins.get_host().records["zoo-tiny"]
    assert (record.distribution, record.version, record.registered) == ("zoo-tiny", "2.5", ["tiny-vae"])
    assert zoo.create("tiny-vae").sample(2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("case", FAILURES)
def test_broken_plugin_warns_and_the_zoo_keeps_working(plugin_distribution, case):
    plugin_distribution(case, FAILURES[case], version="0.3")
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    with pytest.warns(PluginWarning) as caught:
        names = zoo.list_architectures()
    messages = [str(w.message) for w in caught]
    assert any(f"distribution {case} 0.3" in m and EXPECTED_MESSAGE[case] in m for m in messages), messages
    assert BUILT_INS | {"tiny-vae"} <= set(names)
    record = zoo.plugins.get_host().records[case]
    assert record.errors and EXPECTED_MESSAGE[case] in record.errors[0]
    assert zoo.plugins.get_host().registry.owners[("architecture", "conv-vae")] == "conv-vae"


@pytest.mark.parametrize("case", FAILURES)
def test_strict_mode_raises(plugin_distribution, monkeypatch, case):
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    plugin_distribution(case, FAILURES[case])
    with pytest.raises(PluginError, match=EXPECTED_MESSAGE[case].replace("(", r"\(").replace(")", r"\)")):
        zoo.list_architectures()


def test_zoo_plugins_restricts_loading(plugin_distribution, monkeypatch):
    plugin_distribution("raises-on-import", FAILURES["raises-on-import"])
    monkeypatch.setenv("ZOO_PLUGINS", "dense-vae, conv-vae")
    assert zoo.list_architectures() == ["conv-vae", "dense-vae"]
    assert set(zoo.plugins.get_host().records) == {"dense-vae", "conv-vae"}


def test_zoo_plugins_accepts_distribution_names(plugin_distribution, monkeypatch):
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    monkeypatch.setenv("ZOO_PLUGINS", "zoo-tiny")
    assert zoo.list_architectures() == ["tiny-vae"]


def test_empty_zoo_plugins_loads_only_the_core(fresh_plugins, monkeypatch):
    monkeypatch.setenv("ZOO_PLUGINS", "")
    assert zoo.list_architectures() == [] and zoo.list_models() == []
    with pytest.raises(zoo.errors.UnknownNameError, match="unknown architecture 'conv-vae'"):
        zoo.create("conv-vae")


def test_invalid_pretrained_entry_is_isolated(plugin_distribution):
    plugin_distribution("bad-models", """
import zoo
from zoo.registry import PretrainedEntry

@zoo.hookimpl
def register_models(register):
    register(PretrainedEntry(name="conv-vae-nowhere", architecture="conv-vae", config={}, sha256="0" * 64))
    register(PretrainedEntry(name="dense-vae-bad", architecture="dense-vae", config={"latent_dim": 0},
                             sha256="0" * 64, repo_id="x/y"))
    register(PretrainedEntry(name="conv-vae-ok", architecture="conv-vae", config={}, sha256="0" * 64, repo_id="x/y"))
""")
    with pytest.warns(PluginWarning) as caught:
        models = zoo.list_models()
    text = " ".join(str(w.message) for w in caught)
    assert "neither bundled weights nor a repo_id" in text and "'latent_dim'" in text
    assert "conv-vae-ok" in models and "dense-vae-bad" not in models
