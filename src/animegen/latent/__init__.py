"""Latent-space tools: sampling, interpolation (linear, slerp, circular), style mixing, truncation; grids and GIFs."""
from animegen.image_files import grid_array, save_gif, save_grid, save_images, to_uint8
from animegen.latent.ops import circle, condition_labels, conditions_for, lerp, path, slerp
from animegen.latent.tools import interpolate, map_z, mix, render_ws, sample, style_ranges, truncate

__all__ = ["circle", "condition_labels", "conditions_for", "grid_array", "interpolate", "lerp", "map_z", "mix",
           "path", "render_ws", "sample", "save_gif", "save_grid", "save_images", "slerp", "style_ranges",
           "to_uint8", "truncate"]
