"""Numbers about an edit. The method may call a meter; a meter never calls the method."""
