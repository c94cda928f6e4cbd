"""Data: the dataset catalog and registry, idx files, image folders, domain renderings and layouts, the image
loader and its decoders."""
