"""Network configurations as the installers and tools of real distributions write them, for the
unit tests of guestos/netconfig.py and server/convert/netmap.py and the libguestfs tests that
convert them on real disks."""

# Ubuntu 22.04's installer (subiquity): the NIC matched by its MAC and renamed, a static address
UBUNTU_NETPLAN = """# This is the network config written by 'subiquity'
network:
  ethernets:
    eno1:
      match:
        macaddress: 3c:ec:ef:12:34:56
      set-name: eno1
      addresses:
      - 192.0.2.20/24
      routes:
      - to: default
        via: 192.0.2.1
      nameservers:
        addresses: [192.0.2.53]
  version: 2
"""

# RHEL 8: the default route on VLAN bond0.100 over bond0 of eno1 + eno2 (the members bound by
# HWADDR), and a management NIC eno3 with its own static address; ifcfg file name -> text
RHEL_BOND_VLAN_IFCFG = {
    "ifcfg-eno1": "TYPE=Ethernet\nNAME=eno1\nDEVICE=eno1\nHWADDR=00:25:90:aa:bb:01\nONBOOT=yes\nMASTER=bond0\nSLAVE=yes\n",
    "ifcfg-eno2": "TYPE=Ethernet\nNAME=eno2\nDEVICE=eno2\nHWADDR=00:25:90:aa:bb:02\nONBOOT=yes\nMASTER=bond0\nSLAVE=yes\n",
    "ifcfg-bond0": 'DEVICE=bond0\nNAME=bond0\nTYPE=Bond\nBONDING_MASTER=yes\n'
                   'BONDING_OPTS="mode=802.3ad miimon=100"\nBOOTPROTO=none\nONBOOT=yes\n',
    "ifcfg-bond0.100": "DEVICE=bond0.100\nNAME=bond0.100\nVLAN=yes\nBOOTPROTO=none\nIPADDR=192.0.2.10\n"
                       "PREFIX=24\nGATEWAY=192.0.2.1\nDNS1=192.0.2.53\nONBOOT=yes\n",
    "ifcfg-eno3": "TYPE=Ethernet\nDEVICE=eno3\nHWADDR=00:25:90:aa:bb:03\nBOOTPROTO=static\nIPADDR=10.9.0.4\n"
                  "NETMASK=255.255.0.0\n",
}
