"""Features: the plugin interface, and where every feature type and collection is made.

Feature plugins import this package (``from learning.features import register_feature_type,
declare_collection``): its names are those ``learning.features`` had as one module, and they
keep working. Inside it, ``registry`` holds the feature types (the built-in savanna features
and those plugins register) and declared collections; ``compute`` turns readings into
feature values (the same code for online and training rows) and validates them;
``collections`` picks the collection to use (the newest with no invalid feature);
``batch`` turns a batch of new facts into online rows and the features it shows invalid.
"""

from learning.features.compute import (
    FEATURE_TYPES,
    FIXED_ID_CREATED_AT,
    ORIGINAL_FEATURES,
    CollectionStore,
    FeatureCrashed,
    FeatureType,
    Windows,
    compute_matrix,
    compute_row,
    compute_rows,
    declare_collection,
    declared_collections,
    default_collections,
    feature_type,
    load_plugins,
    newly_invalid,
    reading_arrays,
    register_collections,
    register_configured_collections,
    register_declared_collections,
    register_feature_type,
    summarise_windows,
    validate_values,
)

__all__ = [
    "FEATURE_TYPES",
    "FIXED_ID_CREATED_AT",
    "ORIGINAL_FEATURES",
    "CollectionStore",
    "FeatureCrashed",
    "FeatureType",
    "Windows",
    "compute_matrix",
    "compute_row",
    "compute_rows",
    "declare_collection",
    "declared_collections",
    "default_collections",
    "feature_type",
    "load_plugins",
    "newly_invalid",
    "reading_arrays",
    "register_collections",
    "register_configured_collections",
    "register_declared_collections",
    "register_feature_type",
    "summarise_windows",
    "validate_values",
]
