// SPDX-License-Identifier: GPL-2.0
/*
 * habana_example_ib: the example library's stand-in for the vendor's habanalabs_ib.
 *
 * It is not a driver. Like habanalabs_ib, it needs the target kernel's own RDMA core modules
 * (ib_core, ib_uverbs), which ship with the node and never with the image: it registers an
 * InfiniBand client with ib_core and takes the address of an ib_uverbs export, so it loads only
 * where both in-tree modules resolve, with matching symbol versions.
 */
#include <linux/module.h>
#include <rdma/ib_verbs.h>

static int habana_example_ib_add(struct ib_device *device)
{
	return 0;
}

static void habana_example_ib_remove(struct ib_device *device, void *client_data)
{
}

static struct ib_client habana_example_ib_client = {
	.name = "habana_example_ib",
	.add = habana_example_ib_add,
	.remove = habana_example_ib_remove,
};

static int __init habana_example_ib_init(void)
{
	pr_info("habana_example_ib: ib_uverbs default handler at %ps\n",
		uverbs_destroy_def_handler);
	return ib_register_client(&habana_example_ib_client);
}

static void __exit habana_example_ib_exit(void)
{
	ib_unregister_client(&habana_example_ib_client);
}

module_init(habana_example_ib_init);
module_exit(habana_example_ib_exit);
MODULE_DESCRIPTION("Example stand-in for habanalabs_ib: depends on in-tree ib_core and ib_uverbs");
MODULE_LICENSE("GPL");
MODULE_FIRMWARE("habanalabs/example/habana_example_ib.bin");
