import taskq as multiprocessing

worker_config = None


def init_worker(config_dict):
    global worker_config
    worker_config = config_dict


def process_item(item):
    return item * worker_config["multiplier"]


if __name__ == "__main__":
    config = {"multiplier": 10}
    with multiprocessing.Pool(
        processes=3,
        initializer=init_worker,
        initargs=(config,)
    ) as pool:
        results = pool.map(process_item, [1, 2, 3])
    print(results)
