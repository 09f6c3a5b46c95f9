"""The built-in plugins (timm backbones, standard policies), registered through the same hooks
as a third-party plugin and written with only what such a plugin may import.
"""
