"""Datasets as uint8 tensors, verified downloads, and loaders that keep the data on the device."""

from prunekit.data.catalog import data_root, list_datasets, load_dataset, standard_augmentation
from prunekit.data.dataset import ImageTensorDataset
from prunekit.data.download import download_verified
from prunekit.data.image_folder import ImageFolder, ImageFolderLoader
from prunekit.data.loader import DeviceLoader, build_loaders

__all__ = [
    "DeviceLoader",
    "ImageFolder",
    "ImageFolderLoader",
    "ImageTensorDataset",
    "build_loaders",
    "data_root",
    "download_verified",
    "list_datasets",
    "load_dataset",
    "standard_augmentation",
]
