"""KFP component: ingest a source URI into the Dataset artifact (``animegen.data.ingest.run_ingest``)."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Output

from animegen.components.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    source: str,
    dataset: Output[Dataset],
    summary: Output[HTML],
    resolution: int = 64,
    mode: str = "rgb",
    channels: int = 0,
    sha256: str = "",
    holdout: float = 0.1,
    grow_to: int = 0,
    limit: int = 0,
    seed: int = 0,
    s3_endpoint: str = "",
    options: dict = {},
):
    """Ingest ``source`` (folder, archive, https://, s3://, kaggle:, synthetic:) into the Dataset ``dataset``
    (images.npy, index.jsonl, manifest.json); ``summary`` shows counts, skips and a grid of the packed images.
    0 / "" mean "unset" (channels: the mode's own; grow_to, limit: none). ``options``: any other IngestConfig field.
    """
    from animegen.components import runtime as rt
    from animegen.data.dataset import read_packed
    from animegen.data.ingest import IngestConfig, run_ingest

    rt.set_object_store_env(s3_endpoint)
    cfg = rt.build_config(IngestConfig, options, {
        "resolution": resolution, "mode": mode, "channels": channels, "sha256": sha256,
        "holdout": holdout, "grow_to": grow_to, "limit": limit, "seed": seed})
    packed = read_packed(run_ingest(cfg, source, rt.out_dir(dataset), overwrite=True))
    manifest = packed.manifest
    dataset.metadata.update({k: manifest.get(k) for k in ("count", "resolution", "channels", "mode", "source",
                                                          "content_hash", "skipped_count", "grown")})
    rt.dataset_summary(summary, packed, f"Dataset: {manifest.get('source')}")
