"""``python -m medicraft_monai.deploy.classify -i IN -o OUT -m MODEL`` (or HOLOSCAN_INPUT_PATH/OUTPUT_PATH/MODEL_PATH).

Absolute imports: a MAP runs this file as ``python /opt/holoscan/app``, outside the package.
"""

from medicraft_monai.deploy.classify.app import main

if __name__ == "__main__":
    main()
