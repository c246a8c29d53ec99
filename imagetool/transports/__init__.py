"""Images in every direction: one lazy image reader/writer per place an image can live."""
