from batchrunner.entry import main

# Guarded: the compaction worker process (spawn) imports the main module again.
if __name__ == "__main__":
    main()
