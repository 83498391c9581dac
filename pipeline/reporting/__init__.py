"""What people read: metric tables, image grids, training curves (DVCLive), stage timings."""
