"""Model backends behind one seam (base.Backend): open_clip, transformers; fold sites, checkpoints, image features, export."""
