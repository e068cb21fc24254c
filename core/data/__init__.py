"""The data layer: labeled splits and unlabeled pools as pandas tables, images in and tensors out.

Later stages read labeled data only through `load_splits` (data/splits.csv) and a label budget's
subset only through `budget_labels`; unlabeled data only through `load_pools` (data/pools.csv).
How those tables are made (the bundled demo, ImageFolders, PathMNIST npz, slide tiling) stays here.
"""
from core.data.budget import budget_labels, budget_name, budget_views, draw_labels, write_labels
from core.data.demo import build_demo
from core.data.images import ImageDataset, load_rgb, scan_images, stain_jitter, to_pil, to_tensor
from core.data.labeled import prepare_labeled, scan_labeled
from core.data.pools import prepare_pools
from core.data.tables import check, load_pools, load_splits
from core.data.tiling import open_source, tile_grid, tissue_fraction

__all__ = ["ImageDataset", "budget_labels", "budget_name", "budget_views", "build_demo", "check", "draw_labels",
           "load_pools", "load_rgb", "load_splits", "open_source", "prepare_labeled", "prepare_pools",
           "scan_images", "scan_labeled", "stain_jitter", "tile_grid", "tissue_fraction", "to_pil", "to_tensor",
           "write_labels"]
