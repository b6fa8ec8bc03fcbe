"""Custom-VJP depthwise conv (ops.depthwise_conv) vs autodiff of the plain slice sum."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.search.ops import _depthwise_fwd_impl, depthwise_conv


@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (5, 2, 1), (7, 1, 1), (3, 2, 2), (5, 1, 2), (7, 2, 1)])
@pytest.mark.parametrize("hw", [(7, 7), (8, 5)])
def test_depthwise_custom_vjp_matches_autodiff(k, s, d, hw):
    rng = np.random.RandomState(k * 10 + s + d)
    x = jnp.asarray(rng.randn(2, *hw, 3).astype(np.float32))
    kern = jnp.asarray(rng.randn(k, k, 1, 3).astype(np.float32))
    f_custom = jax.jit(jax.value_and_grad(lambda x, w: jnp.sin(depthwise_conv(x, w, k, s, d)).sum(), (0, 1)))
    f_plain = jax.jit(jax.value_and_grad(lambda x, w: jnp.sin(_depthwise_fwd_impl(x, w, k, s, d)).sum(), (0, 1)))
    (v1, (gx1, gk1)), (v2, (gx2, gk2)) = f_custom(x, kern), f_plain(x, kern)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk1, gk2, rtol=1e-5, atol=1e-5)


def test_compilation_cache_switch(tmp_path, monkeypatch):
    from jax.experimental.compilation_cache import compilation_cache as cc

    from tanas_jax.config import FuseConfig
    from tanas_jax.search import runtime
    from tanas_jax.search.spaces import resolve_space

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv(runtime.CACHE_ENV, "0")
        assert runtime.enable_compilation_cache(str(tmp_path / "a")) is None
        assert jax.config.jax_compilation_cache_dir == before
        monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "b"))
        assert runtime.enable_compilation_cache("~/ignored") == str(tmp_path / "b")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "b")
        monkeypatch.delenv(runtime.CACHE_ENV)
        assert runtime.enable_compilation_cache(None) is None
        # the cache folder is not part of the checkpoint fingerprint; the settings are
        data = type("D", (), {"x_train": np.zeros((4, 2, 2, 1))})()
        space = resolve_space("ops:skip_connect,avg_pool_3x3")
        fp = [runtime.fingerprint(data, space, FuseConfig(**kw), 0)
              for kw in ({"compilation_cache": "x"}, {"compilation_cache": "y"}, {"rounds": 4})]
        assert fp[0] == fp[1] != fp[2]
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        cc.reset_cache()
