"""File formats shared by the data sources and the scorers: COCO panoptic and DAVIS."""
