"""Labels: tag sources, the paper's class rules, the Danbooru ResNet tagger, the colour tagger, clustering."""
