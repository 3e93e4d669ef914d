"""Vision: camera sources → motion gate → detector → tracker → counter → interval aggregates."""
