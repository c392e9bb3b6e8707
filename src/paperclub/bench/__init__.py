"""`paperclub bench`: our AR, SD and SSD against the engines people would use instead, on the same weights."""
