"""iqa-plugin: modern image-quality assessment losses, validators and training recipes for BasicSR."""
from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / 'iqa_plugin' / 'version.py').read_text(), version)

setup(
    name='iqa-plugin',
    version=version['__version__'],
    description='MILO, relational IQA, A-FINE and NR-IQA losses and validators for BasicSR training',
    long_description=(Path(__file__).parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['iqa_plugin', 'iqa_plugin.*']),
    # the command's entry module, outside the package so that it can ask the package to defer its registration
    # before importing it (iqa_plugin_cli.py's docstring)
    py_modules=['iqa_plugin_cli'],
    # iqa_plugin/weights/files/ (the shipped weights, next to the weights manager iqa_plugin/weights/__init__.py)
    # and iqa_plugin/apps/configs/ (the demo's option file) are data folders of the packages iqa_plugin.weights and
    # iqa_plugin.apps, not packages: they ship through package_data alone. include_package_data=True would make
    # setuptools treat them as unlisted packages ("Package 'iqa_plugin.weights.files' is absent").
    package_data={'iqa_plugin.weights': ['files/*.pth', 'files/*.json', 'files/*.log'],
                  'iqa_plugin.apps': ['configs/*.yml']},
    include_package_data=False,
    install_requires=[
        'basicsr==1.4.2',
        # 2.6: torch.load reads weights_only=True by default, which BasicSR's own resume loader (used as it is on
        # GPUs, basicsr_glue/dist.py) relies on; torch.serialization.safe_globals is 2.5's
        'torch>=2.6',
        'torchvision>=0.21',  # the release of torch 2.6
        'pyiqa==0.1.16',  # the release tested: iqa_plugin.scoring.pyiqa_offline replaces names inside its arch modules
        'lpips',
        'timm',
        'tensorboard',
        'peft',
        'scikit-image',
        'opencv-python',
        'pyyaml',
        'tqdm',
        'numpy',
    ],
    extras_require={'test': ['pytest', 'diffusers'], 'latent': ['diffusers']},
    entry_points={'console_scripts': ['iqa-plugin=iqa_plugin_cli:main']},
)
